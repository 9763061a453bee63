#include <stdio.h>

#include "learner.h"

/* Not implemented yet: the distributed GRPO learner (issue 4). Says so
 * plainly rather than pretending to train. */
int learner_rl_main(int argc, char **argv)
{
    (void)argc, (void)argv;
    fprintf(stderr, "crl-learner rl: not implemented yet (distributed GRPO arrives with issue 4)\n");
    return 2;
}
