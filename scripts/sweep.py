"""The sweep CLI's earlier name: the same as ``python -m lstm_jax.sweep`` (see its --help)."""

if __name__ == "__main__":
    from lstm_jax.sweep import main

    main()
