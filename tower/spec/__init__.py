"""Each take fully specified: resolution, render keys, the ComfyUI graph, where its image lives."""
