;; Attacks the host: borda_invoke answers with a pointer/length outside linear
;; memory, hoping the host reads beyond it.
(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "borda_abi_version") (result i32) (i32.const 1))
  (func (export "borda_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.get $p))
  ;; ptr = 60000, len = 1 MiB: runs 1 MiB past the end of the 64 KiB memory
  (func (export "borda_invoke") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 60000) (i64.const 32)) (i64.const 1048576))))
