/* SPDX-License-Identifier: MIT */
/* cli.c: option parsing, error reporting, progress line and JSON (cli.h). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t cli_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static cli_opt *find_opt(cli_cmd *cmd, const char *name, size_t len)
{
	for (cli_opt *o = cmd->opts; o && o->name; o++)
		if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
			return o;
	return NULL;
}

int cli_usage_error(const cli_cmd *cmd, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "annann %s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: annann %s %s\n(see 'annann %s --help')\n", cmd->name, cmd->usage, cmd->name);
	return CLI_EXIT_USAGE;
}

int cli_fail(const cli_cmd *cmd, const ann_error *err)
{
	fprintf(stderr, "annann %s: %s\n", cmd->name, err->msg[0] ? err->msg : ann_strerror(err->code));
	return CLI_EXIT_FAIL;
}

void cli_help(const cli_cmd *cmd, FILE *out)
{
	fprintf(out, "usage: annann %s %s\n\n%s\n\noptions:\n", cmd->name, cmd->usage, cmd->summary);
	for (const cli_opt *o = cmd->opts; o && o->name; o++) {
		char left[64];
		snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
		fprintf(out, "  %-24s %s\n", left, o->help);
	}
	fprintf(out, "  %-24s %s\n", "--help", "show this help");
}

int cli_parse(cli_cmd *cmd, int argc, char **argv, bool *help_shown)
{
	*help_shown = false;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			cli_help(cmd, stdout);
			*help_shown = true;
			return 0;
		}
		if (strncmp(a, "--", 2) != 0)
			return cli_usage_error(cmd, "unexpected argument '%s'", a);
		const char *name = a + 2;
		const char *eq = strchr(name, '=');
		size_t len = eq ? (size_t)(eq - name) : strlen(name);
		cli_opt *o = find_opt(cmd, name, len);
		if (!o)
			return cli_usage_error(cmd, "unknown option '--%.*s'", (int)len, name);
		if (!o->arg) {
			if (eq)
				return cli_usage_error(cmd, "option '--%s' takes no value", o->name);
			o->value = "1";
			continue;
		}
		if (eq) {
			o->value = eq + 1;
		} else {
			if (i + 1 >= argc)
				return cli_usage_error(cmd, "option '--%s' needs a value (%s)", o->name, o->arg);
			o->value = argv[++i];
		}
	}
	return 0;
}

const char *cli_get(const cli_cmd *cmd, const char *name)
{
	for (const cli_opt *o = cmd->opts; o && o->name; o++)
		if (strcmp(o->name, name) == 0)
			return o->value;
	return NULL;
}

bool cli_flag(const cli_cmd *cmd, const char *name)
{
	return cli_get(cmd, name) != NULL;
}

const char *cli_need(const cli_cmd *cmd, const char *name)
{
	const char *v = cli_get(cmd, name);
	if (!v)
		cli_usage_error(cmd, "option '--%s' is required", name);
	return v;
}

/* ---- numbers --------------------------------------------------------------
 * One parser for every integer and size option (cli.h). Hand-written rather
 * than strtoull/strtod: those skip leading spaces, accept a sign, exponents,
 * hex, "inf" and "nan", and their float results were converted to integers
 * unchecked (issue 13 D9). */

__extension__ typedef unsigned __int128 cli_u128;

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

const char *cli_parse_u64(const char *s, bool size, uint64_t *out)
{
	const char *what = size ? "is not a size (digits, an optional fraction, then K, M, G or T)"
				: "is not a non-negative integer (digits only)";
	if (!s || !*s)
		return "is empty";
	if (*s == '-')
		return "is negative";
	if (!is_digit(*s))
		return what;
	const char *p = s;
	uint64_t v = 0;
	for (; is_digit(*p); p++) {
		unsigned dg = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - dg) / 10)
			return "is larger than 2^64-1";
		v = v * 10 + dg;
	}
	uint64_t frac = 0, den = 1; /* fraction frac / den, den <= 10^18 */
	bool has_frac = false;
	if (size && *p == '.') {
		p++;
		if (!is_digit(*p))
			return what;
		for (; is_digit(*p); p++)
			if (den < 1000000000000000000ull) {
				frac = frac * 10 + (uint64_t)(*p - '0');
				den *= 10;
			}
		has_frac = true;
	}
	uint64_t mult = 1;
	if (size && *p) {
		switch (*p) {
		case 'k': case 'K': mult = 1ull << 10; break;
		case 'm': case 'M': mult = 1ull << 20; break;
		case 'g': case 'G': mult = 1ull << 30; break;
		case 't': case 'T': mult = 1ull << 40; break;
		default: return what;
		}
		p++;
		if (*p == 'i')
			p++;
		if (*p == 'B' || *p == 'b')
			p++;
	}
	if (*p)
		return what;
	if (has_frac && mult == 1)
		return "has a fraction of a byte (give a unit: K, M, G or T)";
	if (v > UINT64_MAX / mult)
		return "is larger than 2^64-1 bytes";
	uint64_t r = v * mult;
	if (has_frac) {
		/* frac < 10^18 and mult <= 2^40: the product fits in 128 bits. */
		uint64_t f = (uint64_t)((cli_u128)frac * mult / den);
		if (r > UINT64_MAX - f)
			return "is larger than 2^64-1 bytes";
		r += f;
	}
	*out = r;
	return NULL;
}

/* A byte count for messages: "512M" when exact in a unit, else bytes. */
static void fmt_bytes(char *buf, size_t n, uint64_t v)
{
	static const char units[] = "KMGT";
	for (int u = 4; u >= 1; u--) {
		uint64_t m = 1ull << (10 * u);
		if (v >= m && v % m == 0) {
			snprintf(buf, n, "%llu%c", (unsigned long long)(v / m), units[u - 1]);
			return;
		}
	}
	snprintf(buf, n, "%llu", (unsigned long long)v);
}

static bool get_number(const cli_cmd *cmd, const char *name, bool size, uint64_t def, uint64_t lo, uint64_t hi,
		       uint64_t *out)
{
	const char *v = cli_get(cmd, name);
	if (!v) {
		*out = def;
		return true;
	}
	char a[32], b[32];
	if (size) {
		fmt_bytes(a, sizeof a, lo);
		fmt_bytes(b, sizeof b, hi);
	} else {
		snprintf(a, sizeof a, "%llu", (unsigned long long)lo);
		snprintf(b, sizeof b, "%llu", (unsigned long long)hi);
	}
	uint64_t x;
	const char *why = cli_parse_u64(v, size, &x);
	if (why) {
		cli_usage_error(cmd, "option '--%s': '%s' %s; expected %s..%s", name, v, why, a, b);
		return false;
	}
	if (x < lo || x > hi) {
		cli_usage_error(cmd, "option '--%s': %s is out of range; expected %s..%s", name, v, a, b);
		return false;
	}
	*out = x;
	return true;
}

bool cli_u64(const cli_cmd *cmd, const char *name, uint64_t def, uint64_t lo, uint64_t hi, uint64_t *out)
{
	return get_number(cmd, name, false, def, lo, hi, out);
}

bool cli_size(const cli_cmd *cmd, const char *name, uint64_t def, uint64_t lo, uint64_t hi, uint64_t *out)
{
	return get_number(cmd, name, true, def, lo, hi, out);
}

bool cli_double(const cli_cmd *cmd, const char *name, double def, double lo, double hi, double *out)
{
	const char *v = cli_get(cmd, name);
	if (!v) {
		*out = def;
		return true;
	}
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	/* strtod skips leading spaces: a value must start like a number. */
	bool starts = (*v >= '0' && *v <= '9') || *v == '-' || *v == '.';
	if (!starts || errno || *end || end == v || !isfinite(d)) {
		cli_usage_error(cmd, "option '--%s': '%s' is not a finite number; expected %g..%g", name, v, lo, hi);
		return false;
	}
	if (!(d >= lo && d <= hi)) {
		cli_usage_error(cmd, "option '--%s': %s is out of range; expected %g..%g", name, v, lo, hi);
		return false;
	}
	*out = d;
	return true;
}

bool cli_u64_list(const cli_cmd *cmd, const char *name, uint64_t lo, uint64_t hi, uint64_t *out, size_t max,
		  size_t *n)
{
	const char *v = cli_get(cmd, name);
	*n = 0;
	if (!v)
		return true;
	if (strlen(v) >= 1024) {
		cli_usage_error(cmd, "option '--%s': the list is longer than 1023 characters", name);
		return false;
	}
	char buf[1024];
	snprintf(buf, sizeof buf, "%s", v);
	/* strtok_r would merge empty items ("1,,2"): split by hand. */
	for (char *t = buf;;) {
		char *comma = strchr(t, ',');
		if (comma)
			*comma = 0;
		if (*n >= max) {
			cli_usage_error(cmd, "option '--%s': at most %zu values", name, max);
			return false;
		}
		const char *why = cli_parse_u64(t, false, &out[*n]);
		if (why) {
			cli_usage_error(cmd, "option '--%s': item '%s' %s; expected %llu..%llu", name, t, why,
					(unsigned long long)lo, (unsigned long long)hi);
			return false;
		}
		if (out[*n] < lo || out[*n] > hi) {
			cli_usage_error(cmd, "option '--%s': item %s is out of range; expected %llu..%llu", name, t,
					(unsigned long long)lo, (unsigned long long)hi);
			return false;
		}
		(*n)++;
		if (!comma)
			break;
		t = comma + 1;
	}
	return true;
}

/* ---- progress ------------------------------------------------------------ */

void cli_progress_init(cli_progress_state *p, bool quiet)
{
	memset(p, 0, sizeof *p);
	p->quiet = quiet;
	p->tty = isatty(STDERR_FILENO);
	p->last_event_ns = cli_now_ns();
}

static void fmt_dur(char *buf, size_t n, double s)
{
	if (!isfinite(s) || s < 0)
		snprintf(buf, n, "?");
	else if (s < 60)
		snprintf(buf, n, "%.0fs", s);
	else if (s < 3600)
		snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
	else
		snprintf(buf, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

void cli_progress_end(cli_progress_state *p)
{
	if (p->quiet || !p->phase)
		return;
	double el = (double)(cli_now_ns() - p->phase_start_ns) / 1e9;
	if (p->tty && p->drawn)
		fprintf(stderr, "\n");
	fprintf(stderr, "%s: done in %.1fs\n", p->phase, el);
	p->phase = NULL;
	p->drawn = false;
}

void cli_log(void *ctx, const char *line)
{
	cli_progress_state *p = ctx;
	if (p->quiet)
		return;
	if (p->tty && p->drawn) {
		fputs("\r\033[K", stderr);
		p->drawn = false;
	}
	fprintf(stderr, "%s\n", line);
	p->last_draw_ns = 0; /* redraw the progress line at the next report */
	fflush(stderr);
}

void cli_progress(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
	cli_progress_state *p = ctx;
	if (p->quiet)
		return;
	uint64_t now = cli_now_ns();
	if (!p->phase || strcmp(p->phase, phase) != 0) {
		if (p->phase)
			cli_progress_end(p);
		p->phase = phase;
		/* Phases run one after another and many report first only after
		 * some work: the phase began when the previous one last reported. */
		p->phase_start_ns = p->last_event_ns;
		p->last_draw_ns = 0;
	}
	p->last_event_ns = now;
	bool last = total && done >= total;
	uint64_t gap = p->tty ? 200000000ull : 5000000000ull;
	if (!last && p->last_draw_ns && now - p->last_draw_ns < gap)
		return;
	if (!last && !p->last_draw_ns && !p->tty) {
		/* Plain output: first line only after the first interval. */
		p->last_draw_ns = now;
		return;
	}
	p->last_draw_ns = now;
	double el = (double)(now - p->phase_start_ns) / 1e9;
	double rate = el > 0 ? (double)done / el : 0;
	char eta[32] = "?", elapsed[32];
	fmt_dur(elapsed, sizeof elapsed, el);
	if (total && rate > 0)
		fmt_dur(eta, sizeof eta, (double)(total - (done < total ? done : total)) / rate);
	char line[256];
	if (total)
		snprintf(line, sizeof line, "%s: %llu/%llu (%.1f%%) %.0f/s elapsed %s eta %s", phase,
			 (unsigned long long)done, (unsigned long long)total, 100.0 * (double)done / (double)total,
			 rate, elapsed, eta);
	else
		snprintf(line, sizeof line, "%s: %llu %.0f/s elapsed %s", phase, (unsigned long long)done, rate,
			 elapsed);
	if (p->tty) {
		fprintf(stderr, "\r\033[K%s", line);
		p->drawn = true;
	} else {
		fprintf(stderr, "%s\n", line);
	}
	fflush(stderr);
	if (last)
		cli_progress_end(p);
}

/* ---- JSON ---------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, at most U+10FFFF), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s)
{
	unsigned c = s[0];
	size_t n;
	unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/* A JSON string. Paths are bytes, not text: a byte that is not part of
 * well-formed UTF-8 is written as U+FFFD so the output always parses. */
static void json_str_raw(FILE *out, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	fputc('"', out);
	while (*s) {
		unsigned char c = *s;
		size_t n = utf8_len(s);
		if (n == 0) {
			fputs("\\ufffd", out);
			s++;
		} else if (c == '"' || c == '\\') {
			fprintf(out, "\\%c", c);
			s++;
		} else if (c < 0x20 || c == 0x7f) {
			fprintf(out, "\\u%04x", c);
			s++;
		} else {
			fwrite(s, 1, n, out);
			s += n;
		}
	}
	fputc('"', out);
}

static void json_key(cli_json *j, const char *key)
{
	if (j->need_comma[j->depth])
		fputc(',', j->out);
	j->need_comma[j->depth] = true;
	if (key) {
		json_str_raw(j->out, key);
		fputc(':', j->out);
	}
}

void cli_json_begin(cli_json *j, FILE *out)
{
	memset(j, 0, sizeof *j);
	j->out = out;
	fputc('{', out);
}

void cli_json_obj(cli_json *j, const char *key)
{
	json_key(j, key);
	fputc('{', j->out);
	j->need_comma[++j->depth] = false;
}

void cli_json_arr(cli_json *j, const char *key)
{
	json_key(j, key);
	fputc('[', j->out);
	j->need_comma[++j->depth] = false;
}

void cli_json_close_obj(cli_json *j)
{
	fputc('}', j->out);
	j->depth--;
}

void cli_json_close_arr(cli_json *j)
{
	fputc(']', j->out);
	j->depth--;
}

static void json_num(cli_json *j, const char *key, double v, const char *fmt)
{
	json_key(j, key);
	if (isfinite(v))
		fprintf(j->out, fmt, v);
	else
		fputs("null", j->out);
}

void cli_json_num(cli_json *j, const char *key, double v)
{
	json_num(j, key, v, "%.6g");
}

void cli_json_num_exact(cli_json *j, const char *key, double v)
{
	json_num(j, key, v, "%.17g");
}

void cli_json_int(cli_json *j, const char *key, long long v)
{
	json_key(j, key);
	fprintf(j->out, "%lld", v);
}

void cli_json_str(cli_json *j, const char *key, const char *v)
{
	json_key(j, key);
	json_str_raw(j->out, v ? v : "");
}

void cli_json_bool(cli_json *j, const char *key, bool v)
{
	json_key(j, key);
	fputs(v ? "true" : "false", j->out);
}

void cli_json_end(cli_json *j)
{
	fputs("}\n", j->out);
	fflush(j->out);
}

int cli_err(ann_error *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	va_list ap;
	va_start(ap, fmt);
	err->code = code;
	err->sys_errno = 0;
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	return code;
}

int cli_err_prefix(ann_error *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	char old[sizeof err->msg];
	memcpy(old, err->msg, sizeof old);
	old[sizeof old - 1] = '\0';
	va_list ap;
	va_start(ap, fmt);
	int p = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	size_t at = p < 0 ? 0 : (size_t)p < sizeof err->msg ? (size_t)p : sizeof err->msg - 1;
	if (snprintf(err->msg + at, sizeof err->msg - at, ": %s", old) < 0) /* a long pair is cut, not an error */
		err->msg[at] = '\0';
	err->code = code;
	return code;
}
