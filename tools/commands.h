/* SPDX-License-Identifier: MIT */
/* commands.h: the command table entries, one per cmd_*.c file. */
#ifndef ANN_COMMANDS_H
#define ANN_COMMANDS_H

#include "cli.h"

extern cli_cmd cmd_gen, cmd_gt, cmd_convert, cmd_build, cmd_search, cmd_info, cmd_verify, cmd_insert, cmd_delete,
	cmd_compact, cmd_repair;

#endif
