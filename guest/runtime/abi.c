/* ABI entry points shared by every Borda guest module (DESIGN.md, "Guest ABI"). */
#include "borda.h"

BORDA_EXPORT("borda_abi_version") int borda_abi_version(void) { return BORDA_ABI_VERSION; }

/* Returns a 64-byte aligned buffer, or 0 when the memory budget is spent. */
BORDA_EXPORT("borda_alloc") uint32_t borda_alloc(uint32_t nbytes) {
    return (uint32_t)(uintptr_t)arena_alloc(nbytes);
}

/* Frees every allocation at once; memory pages stay committed for reuse. */
BORDA_EXPORT("borda_reset") void borda_reset(void) { arena_reset(); }

/* Marks let a host keep long-lived buffers (weights) below per-call scratch. */
BORDA_EXPORT("borda_mark") uint32_t borda_mark(void) { return (uint32_t)arena_mark(); }

BORDA_EXPORT("borda_release") void borda_release(uint32_t mark) { arena_release(mark); }

/* Model files hold weights above __heap_base: the host reserves them before
 * its first allocation so the arena never hands them out. */
BORDA_EXPORT("borda_reserve") void borda_reserve(uint32_t end) { arena_start_above(end); }

/* Make everything allocated so far permanent (a session's own buffers). */
BORDA_EXPORT("borda_keep") void borda_keep(void) { arena_keep(); }
