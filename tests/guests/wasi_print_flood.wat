;; Attacks host memory through WASI: writes $total bytes to stdout in 64 KiB chunks.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; returns 0 once $total bytes were accepted, else the errno fd_write gave
  (func (export "flood") (param $total i32) (result i32)
    (local $errno i32)
    (memory.fill (i32.const 65536) (i32.const 65) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 65536))  ;; iovec: buf
    (i32.store (i32.const 4) (i32.const 65536))  ;; iovec: len
    (block $done
      (loop $more
        (br_if $done (i32.le_s (local.get $total) (i32.const 0)))
        (local.set $errno
          (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (local.get $errno))
        (local.set $total (i32.sub (local.get $total) (i32.load (i32.const 8))))
        (br $more)))
    (local.get $errno)))
