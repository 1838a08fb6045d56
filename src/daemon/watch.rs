//! Watching the tasks folder (placeholder).
