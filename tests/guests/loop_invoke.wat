;; Attacks CPU through the ABI: a valid guest whose borda_invoke never returns.
(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "borda_abi_version") (result i32) (i32.const 1))
  (func (export "borda_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.get $p))
  (func (export "borda_invoke") (param i32 i32) (result i64)
    (loop (br 0))
    (i64.const 0)))
