"""Runtime backends (engine dir or checkpoint -> Backend). Nothing is imported here: each backend module
imports its own library only when it is asked for, so `import edge_awares.runtimes` stays torch-free."""
