"""Stage orchestration: each module runs one numbered stage by calling the library concepts."""
