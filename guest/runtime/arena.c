/* Bump allocator over linear memory above the module's static data.
 *
 *   __heap_base ... floor        kept: weights, session state (never freed)
 *   floor ... top                scratch: freed by arena_reset / arena_release
 *
 * The host allocates a call's buffers, runs the call, then resets to the floor. */
#include "borda.h"

extern unsigned char __heap_base;

static uintptr_t arena_floor, arena_top;

static uintptr_t align_up(uintptr_t p, uintptr_t a) { return (p + a - 1) & ~(a - 1); }

static void arena_init(void) {
    if (arena_top == 0) arena_floor = arena_top = align_up((uintptr_t)&__heap_base, 64);
}

void *arena_alloc(size_t nbytes) {
    arena_init();
    uintptr_t start = arena_top;
    uintptr_t end = start + nbytes;
    if (end < start || end > 0xFFFFFFC0u) return NULL;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uintptr_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return NULL;
    }
    arena_top = align_up(end, 64);
    return (void *)start;
}

void arena_reset(void) {
    arena_init();
    arena_top = arena_floor;
}

uintptr_t arena_mark(void) {
    arena_init();
    return arena_top;
}

void arena_release(uintptr_t mark) {
    arena_init();
    if (mark >= arena_floor && mark <= arena_top) arena_top = mark;
}

void arena_keep(void) {
    arena_init();
    arena_floor = arena_top;
}

void arena_start_above(uintptr_t end) {
    arena_init();
    if (end > arena_top) arena_top = align_up(end, 64);
    arena_floor = arena_top;
}
