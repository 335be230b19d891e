"""Vision: from a source to faces — decode (PyAV), detect and mesh faces (MediaPipe), read
68 landmarks, cut the aligned chips the encoders read, and track faces across frames."""
