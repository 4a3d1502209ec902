//! Hostile clients: slow headers/bodies/readers (slowhttptest), per-client share, malformed or abandoned bodies (issue 10, items 4 and 6)

mod support;
