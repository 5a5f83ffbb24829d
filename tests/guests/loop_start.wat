;; Attacks CPU during instantiation: the start function never returns.
(module
  (memory (export "memory") 1)
  (func $forever (loop (br 0)))
  (start $forever))
