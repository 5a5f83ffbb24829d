;; Attacks the deadline through WASI: poll_oneoff asks the host to sleep for an hour,
;; where no epoch check can interrupt it.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; returns the errno poll_oneoff gave
  (func (export "sleep") (result i32)
    ;; one clock subscription at 0 (48 bytes): userdata, tag 0 = clock,
    ;; clock id 1 (monotonic) at 16, timeout in ns at 24, precision at 32, flags at 40
    (i64.store (i32.const 0) (i64.const 1))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    ;; events at 64 (32 bytes each), nevents at 128
    (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))))
