/* learner.h: entry points of crl-learner's subcommands (one file each).
 * Each takes argv with argv[0] = the subcommand name and returns the exit
 * status (0 ok, 1 run failed, 2 usage/config error). */
#ifndef CRL_LEARNER_H
#define CRL_LEARNER_H

int learner_sft_main(int argc, char **argv);    /* learner/sft.c */
int learner_rl_main(int argc, char **argv);     /* learner/rl.c */
int learner_replay_main(int argc, char **argv); /* learner/replay.c */
int learner_config_main(int argc, char **argv); /* learner/config_cmd.c */

#endif
