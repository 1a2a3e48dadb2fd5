"""Applies ``pytest --clock``'s shift in a child process (see ``tests/clock.py``)."""

import os

_shift = os.environ.get("TOWER_TEST_CLOCK_SHIFT_S")
if _shift:
    import time

    import time_machine

    time_machine.travel(time.time() + float(_shift), tick=True).start()
    time.time()  # time-machine starts ticking at the first reading, so read it now
