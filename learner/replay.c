#include <stdio.h>

#include "learner.h"

/* Not implemented yet: learner replay mode (issue 5). */
int learner_replay_main(int argc, char **argv)
{
    (void)argc, (void)argv;
    fprintf(stderr, "crl-learner replay: not implemented yet (trajectory replay arrives with issue 5)\n");
    return 2;
}
