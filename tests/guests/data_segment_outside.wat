;; Attacks isolation at instantiation: a data segment placed 64 MiB into a one-page
;; memory, hoping the host writes it past the end.
(module
  (memory (export "memory") 1)
  (data (i32.const 67108848) "sixteen bytes..."))
