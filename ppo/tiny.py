"""`python -m ppo.tiny OUT_DIR`: the documented command, kept; the code is `ppo.demo.tiny`."""

from ppo.demo.tiny import main

if __name__ == "__main__":
    main()
