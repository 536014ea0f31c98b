"""Headless Chromium (Debian's `chromium` and `chromium-driver`) driven by selenium: the demo
test loads the page with it, and docs/demo.md's screenshot is taken with it after a generation:

  python -m tests.headless_chromium http://127.0.0.1:7860/ clip.mp4 docs/demo.png
"""

import shutil
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

# The flags that work in a sandbox without network: without the background-networking ones
# Chromium keeps trying (and failing) to reach Google's services.
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--window-size=1400,1250')
INSTALL = 'apt-get install -y chromium chromium-driver'
UPLOAD_INPUT = '#upload_video input[type=file]'


def start(user_data_dir: str) -> webdriver.Chrome:
  """A headless Chromium with a fresh profile in `user_data_dir`.

  Raises FileNotFoundError naming the missing binary (chromium, chromedriver) and the
  install command: selenium's own fallback would try to download a browser.
  """
  paths = {name: shutil.which(name) for name in ('chromium', 'chromedriver')}
  missing = [name for name, path in paths.items() if path is None]
  if missing:
    raise FileNotFoundError(f'{" and ".join(missing)} not found on PATH; install Debian\'s '
                            f'browser with: {INSTALL}')
  options = webdriver.ChromeOptions()
  options.binary_location = paths['chromium']
  for flag in FLAGS + (f'--user-data-dir={user_data_dir}',):
    options.add_argument(flag)
  return webdriver.Chrome(service=Service(paths['chromedriver']), options=options)


def open_page(driver: webdriver.Chrome, url: str, timeout_s: float = 60) -> None:
  """Loads the demo page and waits until its upload control is there."""
  driver.get(url)
  WebDriverWait(driver, timeout_s).until(
      lambda d: d.find_elements(By.CSS_SELECTOR, UPLOAD_INPUT))


def generate_from_upload(driver: webdriver.Chrome, video: str, timeout_s: float = 600) -> str:
  """Uploads `video` on the open page, presses Generate, waits for the results; returns the
  message shown above them."""
  driver.find_element(By.CSS_SELECTOR, UPLOAD_INPUT).send_keys(video)
  WebDriverWait(driver, timeout_s).until(  # The upload is done when its preview plays.
      lambda d: d.find_elements(By.CSS_SELECTOR, '#upload_video video'))
  driver.find_element(By.CSS_SELECTOR, '#generate_upload').click()
  WebDriverWait(driver, timeout_s).until(
      lambda d: 'Checkpoint' in d.find_element(By.CSS_SELECTOR, '#message').text
      or 'Cannot' in d.find_element(By.CSS_SELECTOR, '#message').text)
  return driver.find_element(By.CSS_SELECTOR, '#message').text


def save_full_page(driver: webdriver.Chrome, path: str) -> None:
  """A PNG of the whole page, not only what the window shows."""
  # Gradio's container is as tall as the window, whatever it holds: measure the content.
  bottom = driver.execute_script(
      'return Math.max(...[...document.querySelectorAll("body *")].map('
      'e => e.getBoundingClientRect().bottom + window.scrollY))')
  frame = driver.get_window_size()['height'] - driver.execute_script('return innerHeight')
  driver.set_window_size(driver.get_window_size()['width'], int(bottom) + frame + 24)
  driver.save_screenshot(path)


def main(url: str, video: str, out_png: str) -> None:
  with tempfile.TemporaryDirectory() as profile:
    driver = start(profile)
    try:
      open_page(driver, url)
      print(generate_from_upload(driver, video))
      save_full_page(driver, out_png)
    finally:
      driver.quit()


if __name__ == '__main__':
  main(*sys.argv[1:])
