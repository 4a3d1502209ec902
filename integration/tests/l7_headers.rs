//! Header hygiene and host validation: override headers, forwarding headers, Host/:authority (issue 10, items 2-3)

mod support;
