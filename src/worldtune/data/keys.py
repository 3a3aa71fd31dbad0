"""The key names of a sample (and of a batch) that every system shares.

A dataset item is a dict; these are the names its common entries go by, whatever the system:

    video      float [C, T, H, W] in [-1, 1]
    latents    float latents of the clip (layout per system, e.g. [T, C, h, w] for Ctrl-World)
    prompt     str, the instruction
    text_emb   float [L, D], the prompt's embedding (from a cache)
    actions    float [T, D], one action (or state) per frame
    state      float [T, D], the robot state when it is given besides the actions
    mask       bool / float, which elements count
    episode_id the episode the item comes from
    frame_ids  long [T], the frames of the episode used
"""

VIDEO = "video"
LATENTS = "latents"
PROMPT = "prompt"
TEXT_EMB = "text_emb"
ACTIONS = "actions"
STATE = "state"
MASK = "mask"
EPISODE_ID = "episode_id"
FRAME_IDS = "frame_ids"
