//! taskbus workers: the Worker trait and the Launcher.
