/* SPDX-License-Identifier: MIT */
/*
 * cli.h: the command-line conventions of the annann tool: long-option
 * parsing from a per-command table, usage errors (exit 2) and failures
 * (exit 1) on stderr, the progress line (redrawn in place on a terminal,
 * periodic plain lines otherwise) and a tiny JSON writer.
 */
#ifndef ANN_CLI_H
#define ANN_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "annann.h"

/* Sizes accepted by --mem and --cache: at most 1 PiB. */
#define CLI_SIZE_MAX (1ull << 50)

#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

typedef struct cli_opt {
	const char *name;  /* long name without dashes */
	const char *arg;   /* argument placeholder ("N", "FILE"), NULL for a flag */
	const char *help;  /* one line */
	const char *value; /* parsed value ("1" for a set flag), NULL if absent */
} cli_opt;

typedef struct cli_cmd {
	const char *name;
	const char *summary;
	const char *usage; /* after "annann NAME " */
	cli_opt *opts;     /* terminated by an entry with name NULL */
	int (*run)(struct cli_cmd *cmd);
} cli_cmd;

/* Parses argv (after the command name) into cmd->opts. Returns 0, or prints
 * the usage error and returns CLI_EXIT_USAGE. `--help` prints help and sets
 * *help_shown. */
int cli_parse(cli_cmd *cmd, int argc, char **argv, bool *help_shown);
void cli_help(const cli_cmd *cmd, FILE *out);
const char *cli_get(const cli_cmd *cmd, const char *name);
bool cli_flag(const cli_cmd *cmd, const char *name);
/* The number parser of every integer and size option, a pure function (no
 * state, no locale) so that a fuzzer can call it. Integers: decimal digits
 * only, no sign, no spaces, at most 2^64-1. Sizes (size true): digits, an
 * optional fraction, then K, M, G or T (powers of 1024, optionally followed
 * by "i" and "B"); a fraction needs a unit; the result is rounded down and at
 * most 2^64-1. Returns NULL and sets *out, or a reason phrase ("is negative")
 * that completes "'VALUE' ..." and leaves *out unchanged. */
const char *cli_parse_u64(const char *s, bool size, uint64_t *out);
/* Typed getters: an absent option gives def; a malformed or out-of-range
 * value prints a usage error naming the option, the value and lo..hi, and
 * returns false (the command then exits CLI_EXIT_USAGE). */
bool cli_u64(const cli_cmd *cmd, const char *name, uint64_t def, uint64_t lo, uint64_t hi, uint64_t *out);
bool cli_size(const cli_cmd *cmd, const char *name, uint64_t def, uint64_t lo, uint64_t hi, uint64_t *out);
bool cli_double(const cli_cmd *cmd, const char *name, double def, double lo, double hi, double *out);
/* Comma-separated unsigned list, at most max entries, each within lo..hi. */
bool cli_u64_list(const cli_cmd *cmd, const char *name, uint64_t lo, uint64_t hi, uint64_t *out, size_t max,
		  size_t *n);
/* Requires an option; prints the usage error if missing. */
const char *cli_need(const cli_cmd *cmd, const char *name);
int cli_usage_error(const cli_cmd *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "annann CMD: MSG" for a library failure and returns CLI_EXIT_FAIL. */
int cli_fail(const cli_cmd *cmd, const ann_error *err);

/* The tool's own checks report in the library's ann_error, with the
 * library's message layout: cli_err sets code and message and returns code;
 * cli_err_prefix puts "prefix: " before the message already set. The tool
 * includes annann.h only, so it has its own (annann.h is its whole view of
 * the library). */
int cli_err(ann_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int cli_err_prefix(ann_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#define CLI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CLI_MAX(a, b) ((a) > (b) ? (a) : (b))
/* Forwards a negative status. */
#define CLI_TRY(expr)                  \
	do {                           \
		int cli_rc_ = (expr);  \
		if (cli_rc_ < 0)       \
			return cli_rc_; \
	} while (0)

/* Progress line on stderr with rate and ETA. Pass cli_progress as the
 * library's ann_progress_fn with a cli_progress_state as its context. */
typedef struct cli_progress_state {
	bool quiet;
	bool tty;
	const char *phase;
	uint64_t phase_start_ns;
	uint64_t last_event_ns; /* the last report of any phase (start of the next) */
	uint64_t last_draw_ns;
	bool drawn;
} cli_progress_state;
void cli_progress_init(cli_progress_state *p, bool quiet);
void cli_progress(void *ctx, const char *phase, uint64_t done, uint64_t total);
/* Ends the current line (if drawn) and prints the phase's elapsed time. */
void cli_progress_end(cli_progress_state *p);
/* A history line (the library's ann_log_fn, same context): printed on its
 * own line, above a progress line being redrawn. */
void cli_log(void *ctx, const char *line);

/* Minimal JSON writer for one object on one line. */
typedef struct cli_json {
	FILE *out;
	int depth;
	bool need_comma[16];
} cli_json;
void cli_json_begin(cli_json *j, FILE *out);
void cli_json_obj(cli_json *j, const char *key); /* nested object (key NULL at top) */
void cli_json_arr(cli_json *j, const char *key);
void cli_json_close_obj(cli_json *j);
void cli_json_close_arr(cli_json *j);
void cli_json_num(cli_json *j, const char *key, double v);
/* The same with every digit a double holds: info, which the binding reads back equal. */
void cli_json_num_exact(cli_json *j, const char *key, double v);
void cli_json_int(cli_json *j, const char *key, long long v);
void cli_json_str(cli_json *j, const char *key, const char *v);
void cli_json_bool(cli_json *j, const char *key, bool v);
void cli_json_end(cli_json *j); /* closes the top object and prints a newline */

uint64_t cli_now_ns(void);

#endif
