/* SPDX-License-Identifier: MIT */
/*
 * fuzz_cli_number: the tool's number parsing (tools/cli.c: cli_u64,
 * cli_size, cli_double, cli_u64_list), given the input as an option value.
 * Byte 0 picks the getter; the rest (up to the first NUL) is the value.
 * Properties checked against a reference computed here:
 *   - an accepted value holds no '-' and no white space (D9: " -1" was 2^64-1);
 *   - cli_u64 equals the decimal digits' value (which must fit in 64 bits);
 *   - cli_size equals number x suffix within one unit of rounding, and a
 *     size that does not fit in 64 bits is refused (D9: 1.5e30G was 0);
 *   - cli_double is finite.
 */
#include <ctype.h>
#include <math.h>

#include "../../tools/cli.h"
#include "fuzz.h"

static cli_opt opts[] = {
	{ "n", "N", "number", NULL },
	{ NULL, NULL, NULL, NULL },
};
static cli_cmd cmd = { "fuzz", "number parsing", "", opts, NULL };

static bool clean(const char *s)
{
	for (; *s; s++)
		if (*s == '-' || isspace((unsigned char)*s))
			return false;
	return true;
}

/* Decimal digits after an optional '+': value, or false if none/overflow. */
static bool ref_u64(const char *s, uint64_t *out)
{
	if (*s == '+')
		s++;
	if (!isdigit((unsigned char)*s))
		return false;
	uint64_t v = 0;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned dg = (unsigned)(*s - '0');
		if (v > (UINT64_MAX - dg) / 10)
			return false;
		v = v * 10 + dg;
	}
	*out = v;
	return *s == '\0';
}

/* number (strtod) times a K/M/G/T suffix (optionally followed by i, B). */
static bool ref_size(const char *s, long double *out)
{
	char *end;
	double x = strtod(s, &end);
	if (end == s || !isfinite(x) || x < 0)
		return false;
	long double m = 1;
	switch (*end) {
	case 'k': case 'K': m = 1024.0L; end++; break;
	case 'm': case 'M': m = 1048576.0L; end++; break;
	case 'g': case 'G': m = 1073741824.0L; end++; break;
	case 't': case 'T': m = 1099511627776.0L; end++; break;
	default: break;
	}
	*out = (long double)x * m;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 256)
		return 0;
	char s[257];
	memcpy(s, data + 1, size - 1);
	s[size - 1] = '\0';
	opts[0].value = s;
	uint64_t v = 0, list[8];
	double d;
	size_t n;
	switch (data[0] % 4) {
	case 0:
		if (cli_u64(&cmd, "n", 0, 0, UINT64_MAX, &v)) {
			uint64_t want;
			FZ_ASSERT(clean(s));
			FZ_ASSERT(ref_u64(s, &want) && v == want);
		}
		break;
	case 1:
		if (cli_size(&cmd, "n", 0, 0, UINT64_MAX, &v)) {
			long double want;
			FZ_ASSERT(clean(s));
			FZ_ASSERT(ref_size(s, &want));
			/* The reference goes through strtod: 2^64 - 1 with leading zeros
			 * rounds to 2^64 there. A parser that wrapped at 2^64 fails
			 * the distance check below (v would be 0). */
			FZ_ASSERT(want <= 18446744073709551616.0L);
			FZ_ASSERT(fabsl((long double)v - want) <= 1.0L + want * 1e-15L);
		}
		break;
	case 2:
		if (cli_double(&cmd, "n", 0, -1e300, 1e300, &d))
			FZ_ASSERT(isfinite(d));
		break;
	default:
		if (cli_u64_list(&cmd, "n", 0, UINT64_MAX, list, 8, &n)) {
			FZ_ASSERT(n <= 8);
			FZ_ASSERT(!strchr(s, '-'));
		}
		break;
	}
	return 0;
}
