"""The daily report and the farm's status, computed from the stores."""
