#include <stdio.h>

#include "learner.h"

/* Placeholder until the warm-up lands (replaced by the SFT work). */
int learner_sft_main(int argc, char **argv)
{
    (void)argc, (void)argv;
    fprintf(stderr, "crl-learner sft: not implemented yet\n");
    return 2;
}
