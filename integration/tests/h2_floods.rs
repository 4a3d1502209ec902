//! h2 control-frame floods and bounded buffering towards slow readers (issue 10, items 5 and 7)

mod support;
