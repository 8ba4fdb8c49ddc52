/* libFuzzer target for the ferry.json loader: any bytes must give either a
 * config or a message naming the file, never a crash, leak or over-read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char err[FERRY_ERR_MAX];
    err[0] = '\0';
    struct ferry_config *cfg = ferry_config_parse("fuzz.json", text, err);
    if (cfg)
        ferry_config_unref(cfg);
    else if (strncmp(err, "fuzz.json", 9) != 0)
        abort();    /* every rejection must name the file */
    free(text);
    return 0;
}
