from django.urls import path
from predictions import views

urlpatterns = [path("predict/", views.predict)]
