"""The limits on what others send, in one place (a leaf module; ``docs/security.md`` lists them with how to change
them): the pixels of an image, and what one request to the demo page may carry."""

#: Width x height above which an image file is refused from its header, before decoding (``data.max_image_pixels``,
#: ``ivit predict --max-pixels``): 150 MP, so a 12000x12000 image passes.
DEFAULT_MAX_IMAGE_PIXELS = 150_000_000

# -- the demo page (``ivit serve``) --
#: At most this many class names per request, of at most this many characters each: a visitor cannot make the page
#: encode thousands of names or send megabytes of text.
MAX_NAMES = 1000
MAX_NAME_CHARS = 200
#: The longest class-names text read at all (every name at its longest, with a separator).
MAX_TEXT_CHARS = MAX_NAMES * (MAX_NAME_CHARS + 2)
#: The largest upload gradio keeps (``ivit serve --max-file-size``); larger ones are refused while they arrive.
MAX_FILE_SIZE = "20MB"
#: Requests waiting for the model at most (``ivit serve --queue-size``); one more is told the page is too busy.
QUEUE_SIZE = 32
#: Requests on the model at once: one (a CoOp-style model holds the last class names it was given).
CONCURRENCY = 1
#: Sets of new class names whose prompt features stay in memory (least recently used dropped first).
PROMPT_SETS = 16
#: Decoded uploads kept in memory (their files are deleted once read), so that the same image classified again under
#: other names is not uploaded again: at most this many, and at most this many pixels together.
IMAGES_KEPT, IMAGE_PIXELS_KEPT = 8, 64 * 2**20
#: gradio's temporary files (uploads never classified): every ``SWEEP[0]`` s, those older than ``SWEEP[1]`` s go.
SWEEP = (60, 300)
