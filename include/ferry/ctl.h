/* `ferry ctl`: command-line client of the admin endpoint. */
#ifndef FERRY_CTL_H
#define FERRY_CTL_H

/* argv holds the arguments after "ctl". Returns the process exit code. */
int ferry_ctl_main(int argc, char **argv);

#endif
