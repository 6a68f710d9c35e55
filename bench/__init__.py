"""Speed and memory benchmarks; each module's `main()` writes its JSON under bench/results/."""
