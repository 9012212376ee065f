"""What every stage stands on: config, the stage entry point, Keras' backend, interrupts,
files and errors."""
