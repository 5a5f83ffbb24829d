;; Attacks memory before any code runs: declares 2 GiB of initial memory.
(module
  (memory (export "memory") 32768))
