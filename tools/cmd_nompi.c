/* SPDX-License-Identifier: MIT */
/* cmd_nompi.c: --distributed in a tool built without MPI (meson found no
 * Open MPI): a usage error saying so. cmd_dist.c replaces this file. */
#include "commands.h"

int cli_build_distributed(cli_cmd *c, const ann_build_opts *o, const char *data, const char *index,
			  const char *router_from)
{
	(void)o;
	(void)data;
	(void)index;
	(void)router_from;
	return cli_usage_error(c, "--distributed: this annann was built without MPI (install libopenmpi-dev and "
			       "rebuild)");
}

int cli_search_distributed(cli_cmd *c)
{
	return cli_usage_error(c, "--distributed: this annann was built without MPI (install libopenmpi-dev and "
			       "rebuild)");
}
