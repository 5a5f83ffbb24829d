/* Bump allocator over linear memory above the module's static data.
 * The host allocates a call's buffers, runs the call, then resets. */
#include "borda.h"

extern unsigned char __heap_base;

static uintptr_t arena_top;

static uintptr_t align_up(uintptr_t p, uintptr_t a) { return (p + a - 1) & ~(a - 1); }

void *arena_alloc(size_t nbytes) {
    if (arena_top == 0) arena_top = align_up((uintptr_t)&__heap_base, 64);
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

void arena_reset(void) { arena_top = 0; }

uintptr_t arena_mark(void) { return arena_top; }

/* Model runtimes keep weights in a data segment above __heap_base: the arena
 * must start above them. */
void arena_start_above(uintptr_t end) {
    if (arena_top == 0) arena_top = align_up((uintptr_t)&__heap_base, 64);
    if (end > arena_top) arena_top = align_up(end, 64);
}

void arena_release(uintptr_t mark) {
    if (mark <= arena_top) arena_top = mark;
}
