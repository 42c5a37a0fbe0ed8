"""What tests and benchmarks share, none of it a test: object builders (`objects`), the local
cluster's harness (`cluster`: kubectl, the operator process, polling; `workloads`: what the tests put
on the cluster; `lifecycle`: the whole-lifecycle scenario; `proxy`), the tiny exported model and a
server process (`serving`), the digits samples (`digits`), and how a missing tool skips or, in CI,
fails (`tools`). bench/ imports these, never a test module or a conftest."""
