;; Attacks isolation: loads and stores far outside its one-page memory.
(module
  (memory (export "memory") 1)
  (func (export "load") (result i32) (i32.load (i32.const 0x7fff0000)))
  (func (export "store") (i32.store (i32.const 65536) (i32.const 42))))
