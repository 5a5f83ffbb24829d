;; A well-behaved WASI guest: writes "hello" to stdout and "careful" to stderr, or
;; leaves through proc_exit.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello")
  (data (i32.const 80) "careful")
  (func $print (param $fd i32) (param $buf i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $buf))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  ;; returns 0, or the first errno fd_write gave
  (func (export "greet") (result i32)
    (local $errno i32)
    (local.set $errno (call $print (i32.const 1) (i32.const 64) (i32.const 5)))
    (if (local.get $errno) (then (return (local.get $errno))))
    (call $print (i32.const 2) (i32.const 80) (i32.const 7)))
  (func (export "quit") (param $status i32) (call $proc_exit (local.get $status))))
