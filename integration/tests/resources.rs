//! Resources: file-descriptor exhaustion, listen backlog, /metrics format checked by promtool (issue 10, items 8-10)

mod support;
