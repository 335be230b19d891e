"""Sources: what a stream is (file, image, URL, webcam) and how it is opened."""
