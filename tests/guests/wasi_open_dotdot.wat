;; Attacks the host filesystem through WASI: path_open("../../etc/passwd") on any fd.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "../../etc/passwd")
  ;; returns the errno path_open gave for directory fd $fd (0 would mean it opened)
  (func (export "open") (param $fd i32) (result i32)
    (call $path_open
      (local.get $fd) (i32.const 1) (i32.const 16) (i32.const 16) (i32.const 0)
      (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 8))))
