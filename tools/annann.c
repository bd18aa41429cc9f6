/* SPDX-License-Identifier: MIT */
/*
 * annann.c: the annann command-line tool. Each command is a cli_cmd with its
 * option table and a run function that parses options, calls the library and
 * prints results (a table, or one JSON object with --json). Exit status: 0
 * success, 1 failure, 2 usage error. docs/CLI.md documents every command.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

static cli_cmd *commands[] = {
	&cmd_gen, &cmd_gt, &cmd_convert, &cmd_build, &cmd_search, &cmd_info, &cmd_verify, &cmd_insert, &cmd_delete, &cmd_compact,
	&cmd_repair, &cmd_tune,
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *out)
{
	fprintf(out, "usage: annann <command> [options]\n\n"
		     "annann builds and queries disk-resident approximate nearest-neighbour indexes.\n\n"
		     "commands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(out, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
	fprintf(out, "  %-10s %s\n  %-10s %s\n\n", "help", "show this list, or 'annann help CMD' for one command",
		"version", "print the version and the SIMD level in use");
	fprintf(out, "Run 'annann <command> --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return CLI_EXIT_USAGE;
	}
	const char *name = argv[1];
	if (strcmp(name, "help") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
		if (argc > 2) {
			for (size_t i = 0; i < NCOMMANDS; i++)
				if (strcmp(commands[i]->name, argv[2]) == 0) {
					cli_help(commands[i], stdout);
					return 0;
				}
			fprintf(stderr, "annann: unknown command '%s'\n", argv[2]);
			return CLI_EXIT_USAGE;
		}
		usage(stdout);
		return 0;
	}
	if (strcmp(name, "version") == 0 || strcmp(name, "--version") == 0) {
		printf("annann %s (simd %s)\n", ann_version(), ann_simd_name(ann_simd_active()));
		return 0;
	}
	for (size_t i = 0; i < NCOMMANDS; i++) {
		cli_cmd *c = commands[i];
		if (strcmp(c->name, name) != 0)
			continue;
		bool help = false;
		int rc = cli_parse(c, argc - 2, argv + 2, &help);
		if (rc || help)
			return rc;
		return c->run(c);
	}
	fprintf(stderr, "annann: unknown command '%s' (see 'annann help')\n", name);
	return CLI_EXIT_USAGE;
}
