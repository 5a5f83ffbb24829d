;; Attacks memory before any code runs: 64 MiB of initial memory, with a data segment
;; at its very end so that all of it would have to exist.
(module
  (memory (export "memory") 1024)
  (data (i32.const 67108848) "sixteen bytes..."))
