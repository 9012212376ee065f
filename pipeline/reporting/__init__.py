"""What the report and evaluate draw and decide: figures, and each task's champion."""
