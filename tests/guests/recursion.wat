;; Attacks the native stack: unbounded recursion.
(module
  (memory (export "memory") 1)
  (func $down (export "down") (param i32) (result i32)
    (i32.add (call $down (i32.add (local.get 0) (i32.const 1))) (i32.const 1))))
