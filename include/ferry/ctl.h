/* `ferry ctl`: command-line client of the admin endpoint; and `ferry
 * version` (buildinfo.c). */
#ifndef FERRY_CTL_H
#define FERRY_CTL_H

#include <stdbool.h>

/* argv holds the arguments after "ctl". Returns the process exit code. */
int ferry_ctl_main(int argc, char **argv);

/* Prints the version; as_json: with the git commit and the version of every
 * linked library. Returns the process exit code. */
int ferry_version_main(bool as_json);

#endif
