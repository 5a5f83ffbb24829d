;; Attacks host secrets through WASI: counts the environment variables and arguments
;; it can see (and traps if either call fails).
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; (environ count, environ bytes, argc, argv bytes)
  (func (export "sizes") (result i32 i32 i32 i32)
    (if (call $environ_sizes_get (i32.const 0) (i32.const 4)) (then unreachable))
    (if (call $args_sizes_get (i32.const 8) (i32.const 12)) (then unreachable))
    (i32.load (i32.const 0)) (i32.load (i32.const 4))
    (i32.load (i32.const 8)) (i32.load (i32.const 12))))
