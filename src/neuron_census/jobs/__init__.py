"""What each rule's script calls, one module per part of the workflow: reads inputs, calls the package,
writes outputs atomically."""
