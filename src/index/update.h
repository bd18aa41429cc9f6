/* SPDX-License-Identifier: MIT */
/* update.h: internal additions to the writer API of annann.h (tests, tools). */
#ifndef ANN_UPDATE_H
#define ANN_UPDATE_H

#include "common.h"

/* Whether id is live in the last committed state (docs/UPDATES.md rule 2). */
int ann_writer_live(ann_writer *w, int64_t id, bool *yes, ann_error *err);

#endif
