//! Deny rules against every common server's reading of a path (issue 10, item 1)

mod support;
